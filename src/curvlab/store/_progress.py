"""One progress bar helper for the store's long loops (Rich, on stderr)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def progress_bar(
    total: int, description: str, enabled: bool | Callable[[int], None]
) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; show a Rich bar on stderr when ``enabled``.

    Args:
        total: Steps in all.
        description: Text before the bar.
        enabled: Show the bar (otherwise ``advance`` does nothing), or a
            callable that receives ``n`` instead (a caller's own progress).

    Yields:
        A callable advancing the bar by ``n`` steps.
    """
    if callable(enabled):
        yield enabled
        return
    if not enabled:
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)
