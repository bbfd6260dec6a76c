"""Which model version serves which (model, version spec), and hot swaps without losing a request.

Loading (checksum, shapes, warm-up) happens in a background thread; only a finished, verified
runtime is put into the serving table, by a single dict assignment. The batching worker reads
the table once per batch, so in-flight batches finish on the runtime that took them and the next
batch uses the new one. A package that fails verification is refused (logged, counted) and the
previous version keeps serving.

An automatic rollback is one tenant's (docs/lifecycle.md section 6): it pins that tenant to the
predecessor of (model, spec) while the other tenants keep the shared runtime, until the registry
pointer names another version.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Set

from mlserving_common.logs import event
from mlserving_common.package import PackageError
from mlserving_common.registry import Registry, RegistryError
from mlserving_server import sandbox
from mlserving_server.config import CURRENT
from mlserving_server.metrics import Metrics
from mlserving_server.runtime import ModelRuntime

log = logging.getLogger("mlserving.models")
#: on_swap(model, spec, old runtime, new runtime, reason, tenant): reason is "registry" or
#: "auto-rollback"; tenant None = the shared runtime of (model, spec) changed (tenants pinned by an
#: auto-rollback keep theirs), a tenant = only that tenant's runtime changed (a pin set or lifted).
SwapListener = Callable[[str, str, "ModelRuntime | None", ModelRuntime, str, "str | None"], None]


class ModelStore:
    """Serving table keyed by (model, spec), where spec is `current` or a pinned vN."""

    def __init__(
        self,
        specs: set[tuple[str, str]],
        registry: Registry,
        metrics: Metrics,
        max_batch: int,
        poll_seconds: float,
        on_swap: SwapListener | None = None,
        optional: Set[tuple[str, str]] = frozenset(),
    ) -> None:
        # Optional specs (shadow versions) are loaded and followed like the others but are not
        # needed for readiness: a missing shadow must not keep a tenant from serving.
        self._specs = sorted(set(specs) | set(optional))
        self._required = set(specs)
        self._registry = registry
        self._metrics = metrics
        self._max_batch = max_batch
        self._poll_seconds = poll_seconds
        self._on_swap = on_swap
        self._serving: dict[tuple[str, str], ModelRuntime] = {}
        self._refused: dict[tuple[str, str], str] = {}
        self._reported: set[tuple[str, str, str]] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._changed = threading.Event()
        #: (tenant, model, spec) -> (version rolled back automatically for the tenant, the runtime it
        #: is pinned to instead); lifted when the pointer names another version
        self._pinned: dict[tuple[str, str, str], tuple[str, ModelRuntime]] = {}
        self._swap_lock = threading.Lock()

    # -- hot path ---------------------------------------------------------------------------
    def get(self, model: str, spec: str, tenant: str | None = None) -> ModelRuntime | None:
        """What serves (model, spec) to `tenant`: its auto-rollback pin if any, else the shared runtime."""
        if tenant is not None and self._pinned:
            pin = self._pinned.get((tenant, model, spec))
            if pin is not None:
                return pin[1]
        return self._serving.get((model, spec))

    def pinned(self, tenant: str, model: str, spec: str) -> ModelRuntime | None:
        pin = self._pinned.get((tenant, model, spec))
        return pin[1] if pin is not None else None

    # -- state ------------------------------------------------------------------------------
    def all_loaded(self) -> bool:
        return all(key in self._serving for key in self._required)

    def loaded(self, model: str, spec: str) -> bool:
        return (model, spec) in self._serving

    def serving_versions(self) -> dict[str, str]:
        return {f"{model}:{spec}": runtime.version for (model, spec), runtime in self._serving.items()}

    # -- loading ----------------------------------------------------------------------------
    def refresh(self) -> bool:
        """Bring every spec to the version it should serve; True if anything changed."""
        changed = False
        for model, spec in self._specs:
            try:
                changed |= self._refresh_one(model, spec)
            except Exception:  # a bug here must not stop the poller nor the serving versions
                log.exception("model refresh failed", extra={"fields": {"model": model, "spec": spec}})
        if changed:
            self._changed.set()
        return changed

    def _refresh_one(self, model: str, spec: str) -> bool:
        try:
            desired = self._registry.current(model) if spec == CURRENT else spec
        except RegistryError as exc:  # e.g. an unreadable current.json: keep serving what we have
            self._report_once(model, spec, "pointer", str(exc), logging.ERROR)
            return False
        if desired is None:
            self._report_once(model, spec, "none", "no current version in the registry yet", logging.WARNING)
            return False
        key = (model, spec)
        serving = self._serving.get(key)
        if serving is not None and serving.version == desired:
            return False
        if (model, desired) in self._refused:
            return False
        runtime = self._shared_runtime(model, desired) or self._load(model, desired)
        if runtime is None:
            return False
        with self._swap_lock:
            serving = self._serving.get(key)
            self._serving[key] = runtime  # the atomic swap
        if serving is not None:
            self._metrics.model_swaps.labels(model).inc()
        event(
            log,
            "model serving",
            model=model,
            spec=spec,
            version=runtime.version,
            previous=serving.version if serving else None,
        )
        if self._on_swap is not None:
            self._on_swap(model, spec, serving, runtime, "registry", None)
        self._lift_pins(model, spec, runtime)
        return True

    def _lift_pins(self, model: str, spec: str, runtime: ModelRuntime) -> None:
        """The pointer moved on from a version rolled back for some tenants: they follow it again."""
        with self._swap_lock:
            lifted = [
                (tenant, pin)
                for (tenant, m, s), pin in self._pinned.items()
                if m == model and s == spec and pin[0] != runtime.version
            ]
            for tenant, _ in lifted:
                del self._pinned[(tenant, model, spec)]
        for tenant, (rejected, predecessor) in lifted:
            event(
                log,
                "rolled-back version unblocked",
                tenant=tenant,
                model=model,
                spec=spec,
                version=rejected,
                pointer=runtime.version,
            )
            if self._on_swap is not None:
                self._on_swap(model, spec, predecessor, runtime, "registry", tenant)

    def roll_back(self, tenant: str, model: str, spec: str, predecessor: ModelRuntime, rejected: str) -> bool:
        """Pin `tenant` to `predecessor` instead of `rejected` while the pointer names `rejected`;
        the other tenants keep the shared runtime.

        Called by the auto-rollback guard (worker thread); False if `rejected` no longer serves.
        """
        key = (model, spec)
        with self._swap_lock:
            serving = self._serving.get(key)
            if serving is None or serving.version != rejected or (tenant, model, spec) in self._pinned:
                return False
            self._pinned[(tenant, model, spec)] = (rejected, predecessor)
        self._metrics.model_swaps.labels(model).inc()
        event(
            log,
            "model serving",
            logging.WARNING,
            tenant=tenant,
            model=model,
            spec=spec,
            version=predecessor.version,
            previous=rejected,
            reason="auto-rollback",
        )
        if self._on_swap is not None:
            self._on_swap(model, spec, serving, predecessor, "auto-rollback", tenant)
        return True

    def blocked(self) -> dict[str, str]:
        """`tenant/model:spec` -> version rolled back for that tenant (for /readyz)."""
        return {
            f"{tenant}/{model}:{spec}": rejected for (tenant, model, spec), (rejected, _) in list(self._pinned.items())
        }

    def _shared_runtime(self, model: str, version: str) -> ModelRuntime | None:
        """Reuse a runtime another spec already loaded (e.g. `current` and a pin on the same vN), or
        one a tenant is pinned to by an auto-rollback (the pointer moving back to it)."""
        pinned = [((m, s), runtime) for (_, m, s), (_, runtime) in list(self._pinned.items())]
        for (m, _), runtime in [*self._serving.items(), *pinned]:
            if m == model and runtime.version == version:
                return runtime
        return None

    def _load(self, model: str, version: str) -> ModelRuntime | None:
        try:
            path = self._registry.fetch(model, version)
        except RegistryError as exc:  # not published (yet): retried on the next poll
            self._report_once(model, version, "missing", str(exc), logging.WARNING)
            return None
        started = time.perf_counter()
        try:
            sandbox.probe(path, self._max_batch)  # a package that crashes LiteRT is refused, not fatal
            runtime = ModelRuntime(path, self._max_batch)
            if runtime.name != model:
                raise PackageError(f"metadata.json: name {runtime.name!r} but the registry holds it as {model!r}")
            if runtime.version != version:
                # The registry's name for the package is what operators promote and clients see.
                event(
                    log,
                    "model version differs",
                    logging.WARNING,
                    model=model,
                    version=version,
                    metadata_version=runtime.version,
                )
                runtime.version = version
        except Exception as exc:  # noqa: BLE001 - PackageError, and anything LiteRT throws at a broken file
            reason = str(exc) if isinstance(exc, PackageError) else f"{type(exc).__name__}: {exc}"
            self._refused[(model, version)] = reason
            self._metrics.model_load_failures.labels(model, version).inc()
            event(log, "model refused", logging.ERROR, model=model, version=version, reason=reason)
            return None
        elapsed = time.perf_counter() - started
        self._metrics.model_load.labels(model).observe(elapsed)
        event(log, "model loaded", model=model, version=version, seconds=round(elapsed, 4), path=str(path))
        return runtime

    def _report_once(self, model: str, version: str, kind: str, message: str, level: int) -> None:
        key = (model, version, kind)
        if key not in self._reported:
            self._reported.add(key)
            event(log, "model unavailable", level, model=model, version=version, reason=message)

    # -- background poller ------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._poll, name="model-poller", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            self._stop.wait(self._poll_seconds)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
