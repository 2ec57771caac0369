"""FSL-SAGE for Flower's legacy ``ServerApp(server_fn=...)`` and ``flwr.server.strategy`` API."""

from __future__ import annotations

from logging import WARNING

from flwr.app import ArrayRecord
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.logger import log
from flwr.compat.common.recorddict_compat import fitres_to_recorddict, recorddict_to_fitins
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy

from fsl_sage_flwr.strategies.fsl_sage import FSLSage
from fsl_sage_flwr.transport.arrays import to_array
from fsl_sage_flwr.transport.log_text import client_text


class FSLSageLegacy(Strategy):
    """The legacy-API face of an :class:`FSLSage` strategy: same core, same records.

    Every decision (warm-up, sampling, reply checks, server training, alignment,
    averaging, evaluation) is the wrapped strategy's; this class only turns
    ``FitIns``/``FitRes`` into the records it reads and writes. The warm-up runs
    inside the first ``configure_fit``, through each new client's proxy.

    Parameters
    ----------
    core : FSLSage
        The strategy doing the work (see :meth:`fsl_sage_flwr.SplitSpec.legacy_strategy`).
    timeout : float, optional
        Seconds to wait for a warm-up reply.
    """

    def __init__(self, core: FSLSage, timeout: float | None = None) -> None:
        self.core = core
        self.timeout = timeout
        self._keys = list(core.shared_model.state_dict())

    def __repr__(self) -> str:
        return f"FSLSageLegacy({self.core!r})"

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """The client model's initial state, in state-dict order."""
        return ndarrays_to_parameters(ArrayRecord(self.core.shared_model.state_dict()).to_numpy_ndarrays())

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """Warm up new clients, then sample and build each one's FitIns."""
        arrays = self._to_arrays(parameters)
        client_manager.wait_for(self.core.min_available_nodes, timeout=self.timeout or 86400)
        proxies = {int(proxy.cid): proxy for proxy in client_manager.all().values()}
        self._warm_up(arrays, proxies, server_round)
        requests = self.core.train_requests(server_round, self.core.remember_sent(arrays), set(proxies))
        if not requests:
            self.core.aggregate_replies(server_round, [])  # counts the empty round
        return [(proxies[node_id], recorddict_to_fitins(content, keep_input=True)) for node_id, content in requests]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Hand the replies to the core; return the averaged client model."""
        for failure in failures:
            log(
                WARNING,
                "dropped reply: %s",
                client_text(failure if isinstance(failure, BaseException) else failure[1].status),
            )
        replies = [(int(proxy.cid), fitres_to_recorddict(res, keep_input=True)) for proxy, res in results]
        arrays, metrics = self.core.aggregate_replies(server_round, replies)
        if arrays is None:
            return None, {}
        return ndarrays_to_parameters(arrays.to_numpy_ndarrays()), dict(metrics or {})

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        """No federated evaluation: the server evaluates (:meth:`evaluate`)."""
        return []

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        """Nothing to aggregate: there is no federated evaluation."""
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        """Server model on top of the client model, on the test set: ``(loss, {<metric>: ...})`` (e.g. accuracy)."""
        metrics = self.core.evaluate_global(server_round, self._to_arrays(parameters))
        if metrics is None:
            return None
        return float(metrics["loss"]), {key: float(value) for key, value in metrics.items() if key != "loss"}

    def _warm_up(self, arrays: ArrayRecord, proxies: dict[int, ClientProxy], server_round: int) -> None:
        new = self.core.nodes_to_warm_up(server_round, set(proxies))
        if not new:
            return
        fit_ins = recorddict_to_fitins(self.core.warm_up_request(arrays), keep_input=True)
        replies = []
        for node_id in new:
            try:
                fit_res = proxies[node_id].fit(fit_ins, timeout=self.timeout, group_id=server_round)
            except Exception as err:  # a failed node is dropped, as its reply would be
                self.core.log_dropped(node_id, f"warm-up failed: {err}")
                continue
            replies.append((node_id, fitres_to_recorddict(fit_res, keep_input=True)))
        self.core.accept_warm_up(replies)

    def _to_arrays(self, parameters: Parameters) -> ArrayRecord:
        values = parameters_to_ndarrays(parameters)
        if len(values) != len(self._keys):
            raise ValueError(f"expected {len(self._keys)} client-model arrays, got {len(values)}")
        return ArrayRecord(array_dict={k: to_array(v) for k, v in zip(self._keys, values)})
