"""``python -m sfpp.serve``: a local page that streams a student's video live and switches prompts.

Composes ``conf/serve.yaml`` (``generate.yaml``'s student, codec, text encoder and generation
settings, and the server's own), builds the page's app (:func:`sfpp.apps.streaming.build_app`) and
serves it with uvicorn on ``host:port``, printing the URL. A checkpoint that does not load does not
stop the server: the page says what went wrong.
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from sfpp.generate import build_generator
from sfpp.utils.cli import quiet_known_warnings, take_debug_flag, user_errors
from sfpp.utils.config_dir import find_config_dir

__all__ = ["main", "serve"]

log = logging.getLogger(__name__)


def make_app(cfg: DictConfig):
    """The Starlette app of a composed ``serve`` config."""
    from sfpp.apps.streaming import StreamLimits, build_app

    limits = StreamLimits(
        max_clients=cfg.max_clients,
        max_length=cfg.max_length,
        queue_frames=cfg.queue_frames,
        stats_every_frames=cfg.stats_every_frames,
        window_frames=cfg.window_frames,
        max_upload_bytes=cfg.max_upload_bytes,
    )
    suggestions = hydra.utils.instantiate(cfg.suggestions) if cfg.get("suggestions") else ()
    clips = hydra.utils.instantiate(cfg.start_clips) if cfg.get("start_clips") else None
    return build_app(
        lambda: build_generator(cfg),
        limits=limits,
        save_dir=cfg.save_dir,
        default_length=cfg.default_length,
        suggestions=list(suggestions),
        clips=clips,
    )


def serve(cfg: DictConfig) -> None:
    """Run a composed ``serve`` config: the body of ``python -m sfpp.serve``."""
    import uvicorn

    app = make_app(cfg)
    url = f"http://{cfg.host}:{cfg.port}"
    print(f"sfpp streaming page: {url}  (Ctrl+C stops the server)", flush=True)
    uvicorn.run(app, host=cfg.host, port=int(cfg.port), log_level="warning")


def main() -> None:
    """Parse the command line with Hydra and run :func:`serve`."""
    quiet_known_warnings()
    take_debug_flag()
    hydra_main = hydra.main(version_base="1.3", config_path=str(find_config_dir()), config_name="serve")
    hydra_main(user_errors(serve))()


if __name__ == "__main__":
    main()
