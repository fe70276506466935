"""Which workload does a request belong to?"""

from __future__ import annotations

from collections.abc import Iterable

from .errors import NotFound
from .workload import Workload

__all__ = ["Registry"]


class Registry:
    """All workloads, by name and by the OpenAI model names they serve."""

    def __init__(self, workloads: Iterable[Workload]) -> None:
        self._by_name = {w.name: w for w in workloads}
        self._by_model = {m: w for w in self._by_name.values() for m in w.settings.models}

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    @property
    def models(self) -> list[str]:
        return sorted(self._by_model)

    def by_name(self, name: str) -> Workload:
        try:
            return self._by_name[name]
        except KeyError:
            raise NotFound(
                f"no workload named {name!r}; known: {', '.join(sorted(self._by_name))}"
            ) from None

    def by_route(self, path: str, host: str) -> Workload | None:
        """An 'http' workload for this Host (port ignored) or, failing that, the longest
        path_prefix that ``path`` is under."""
        name = host.rsplit(":", 1)[0].lower() if host and not host.startswith("[") else host
        for workload in self._by_name.values():
            if name in workload.settings.hosts:
                return workload
        best = None
        for workload in self._by_name.values():
            prefix = workload.settings.path_prefix
            if (
                prefix
                and (path == prefix or path.startswith(prefix + "/"))
                and (best is None or len(prefix) > len(best.settings.path_prefix))
            ):
                best = workload
        return best

    def by_model(self, model: str) -> Workload:
        try:
            return self._by_model[model]
        except KeyError:
            raise NotFound(
                f"model {model!r} is not served here; available models: {', '.join(self.models)}",
                extra={"available_models": self.models},
            ) from None
