"""A function applied again and again to a state of fixed shape: on CUDA, captured once in a CUDA graph.

Two users: the blocks of a deep network (the exact finite-width chain and the plain
networks, :mod:`particles.covariance.chain`, :mod:`particles.networks.architectures`) and the
fixed-step loop between two saves of :func:`integrators.solve` (:mod:`integrators.segments`).

The exact finite-width chain (:mod:`particles.covariance.chain`) runs a few dozen tiny
kernels per block on (batch, m, m) matrices; on a GPU their launches, not their work, set
the pace (measured on an H200: ~2,300 launches of 1-3 us for 32 blocks, 102 ms of CPU time
for 6.5 ms of GPU time). A CUDA graph (``torch.cuda.graphs``) records the block once and
replays it with one launch. The block must be a pure function of its state tensor (and of the
run's torch generator, if it draws), with fixed shapes and no host synchronisation; its random draws
stay random from replay to replay because the generator is registered with the graph
(graph-safe Philox offsets), so the law of the run is unchanged (its draws are not the
eager run's: neither are a CPU run's and a GPU run's).

On the CPU, or where capture is not possible (an older torch without
``CUDAGraph.register_generator_state``, an operation that cannot be captured), the block
runs eagerly: ``graphed`` says which happened.
"""

from __future__ import annotations

__all__ = ["RepeatedBlock"]


class RepeatedBlock:
    """``state -> fn(state)``, replayed from a CUDA graph after its first call when ``use_graph``.

    Parameters
    ----------
    fn : the function, tensor -> tensor of fixed shapes, without host synchronisation.
    gen : the torch generator its random draws use (registered with the graph), or None
        when it draws nothing.
    use_graph : capture on the second call (on CUDA only; the first call runs eagerly).
    """

    def __init__(self, fn, gen, use_graph: bool) -> None:
        self.fn, self.gen = fn, gen
        self.graphed = False
        self._want = bool(use_graph)
        self._graph = None
        self._in = self._out = None

    def __call__(self, state):
        if self._graph is not None:
            self._in.copy_(state)
            self._graph.replay()
            return self._out
        out = self.fn(state)  # eager: the first call (it also warms up cuBLAS / cuSOLVER handles)
        if self._want:
            self._want = False
            self._capture(state)
        return out

    def _capture(self, like) -> None:
        import torch

        try:
            graph = torch.cuda.CUDAGraph()
            if self.gen is not None:
                graph.register_generator_state(self.gen)
            static_in = like.clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                with torch.cuda.graph(graph):
                    static_out = self.fn(static_in)
            torch.cuda.current_stream().wait_stream(side)
        except (AttributeError, RuntimeError, NotImplementedError):
            return  # runs eagerly
        self._graph, self._in, self._out = graph, static_in, static_out
        self.graphed = True
