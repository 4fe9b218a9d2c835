"""Cutting texts into forward passes by a budget of tokens rather than a fixed count: one `PassPolicy` that the
encoder states and the batching engine applies."""

from __future__ import annotations

from dataclasses import dataclass

# Padded tokens (rows × longest row) per forward pass. On two CPU cores, MiniLM-L6 over mixed
# lengths ran fastest at 1-2k (about 1.2x sentence-transformers, against 0.9x at 8k); the GPU
# figure is a starting point, not yet measured.
CPU_TOKEN_BUDGET = 2048
GPU_TOKEN_BUDGET = 16384
DEFAULT_MAX_BATCH = 256
# What one more forward pass costs on two CPU cores, in padded tokens of MiniLM-L6 work: a pass of 1 x 8 tokens
# took 1.8 ms in ONNX Runtime and 6.8 ms in torch, where each further token costs 0.09-0.14 ms and 0.15-0.19 ms.
# Batching saves no per-token time on a CPU, so padding is pure loss: one pass of 32 texts of 16-128 tokens
# ran 1.6x slower than the same texts as 4 passes sorted by length. On a GPU (None) passes are only cut by
# the budget: there a pass's fixed cost is far larger, and it has not been measured.
CPU_PASS_OVERHEAD_TOKENS = {"onnxruntime": 16, "torch": 48}


@dataclass(frozen=True)
class PassPolicy:
    """How rows of token ids are cut into forward passes, stated by the encoder (`Encoder.pass_policy`): the
    batching engine slices each request by it (`slices`) and joins slices while they `fit`; `Encoder.embed_ids`,
    the one place passes are cut, cuts the rows it is given (`passes`).

    `overhead_tokens` is what one more pass costs in padded tokens of work: on the CPU, where batching saves no
    per-token time, passes are cut where padding costs more than that, and the budget counts the tokens texts
    hold; None (a GPU) cuts by the budget of padded tokens alone. `packed` (a padding-free backend, e5.packed)
    cuts every pass by the tokens its texts hold, as full as the budget allows: there padding costs nothing.
    """

    token_budget: int
    max_rows: int = DEFAULT_MAX_BATCH
    overhead_tokens: int | None = None
    packed: bool = False

    def slices(self, lengths: list[int]) -> list[list[int]]:
        """One request's rows, shortest first, in slices of at most the budget (padded tokens, or real ones for
        a packed backend): what it gives each pass it takes part in."""
        if self.packed:
            return real_token_batches(lengths, self.token_budget, self.max_rows)
        return token_budget_batches(lengths, self.token_budget, self.max_rows)

    def passes(self, lengths: list[int]) -> list[list[int]]:
        """Rows to run now cut into the passes to run them in (on the CPU, also where padding costs more than
        a pass)."""
        if self.packed:
            return real_token_batches(lengths, self.token_budget, self.max_rows)
        return token_budget_batches(lengths, self.token_budget, self.max_rows, self.overhead_tokens)

    def fits(self, rows: int, width: int, tokens: int) -> bool:
        """Whether a joined pass of `rows` rows, the widest `width` tokens, `tokens` in all, keeps the budget."""
        size = tokens if self.overhead_tokens is not None or self.packed else rows * width
        return size <= self.token_budget and rows <= self.max_rows


def default_token_budget(device_type: str, configured: int | None = None) -> int:
    """`configured` (E5_TOKEN_BUDGET) if set, else the budget for a 'cpu' or 'cuda' device."""
    return configured or (GPU_TOKEN_BUDGET if device_type == "cuda" else CPU_TOKEN_BUDGET)


def token_budget_batches(lengths: list[int], token_budget: int, max_batch: int = DEFAULT_MAX_BATCH,
                         pass_overhead_tokens: int | None = None) -> list[list[int]]:
    """Group indices of `lengths`, shortest first, so each batch's padded size stays within `token_budget`.

    Sorting keeps padding small; a text longer than the budget alone still gets a batch of its own. With
    `pass_overhead_tokens`, batches are also cut where the padding a wider batch adds costs more than a pass.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    if pass_overhead_tokens is not None:
        return [order[start:end] for start, end in
                _cheapest_cuts([lengths[i] for i in order], token_budget, max_batch, pass_overhead_tokens)]
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # Sorted ascending, so the newcomer is the longest row of the batch it joins.
        if current and ((len(current) + 1) * lengths[i] > token_budget or len(current) == max_batch):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def real_token_batches(lengths: list[int], token_budget: int, max_batch: int = DEFAULT_MAX_BATCH) -> list[list[int]]:
    """Group indices of `lengths`, shortest first, so each batch holds at most `token_budget` real tokens and
    `max_batch` rows (a row over the budget alone still gets a batch of its own): the cut of a packed backend,
    where padding costs nothing. Sorted, so attention padded per text (e5.packed) pads little."""
    batches: list[list[int]] = []
    current: list[int] = []
    tokens = 0
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if current and (tokens + lengths[i] > token_budget or len(current) == max_batch):
            batches.append(current)
            current, tokens = [], 0
        current.append(i)
        tokens += lengths[i]
    if current:
        batches.append(current)
    return batches


def _cheapest_cuts(ascending: list[int], token_budget: int, max_batch: int, overhead: int) -> list[tuple[int, int]]:
    """The (start, end) spans of `ascending` lengths that minimise the sum of `overhead + rows x longest` over
    batches within `token_budget` and `max_batch` (a row over the budget alone is allowed): dynamic programming."""
    n = len(ascending)
    cost = [0] * (n + 1)  # cost[end]: the cheapest way to run the first `end` rows
    start_of = [0] * (n + 1)
    for end in range(1, n + 1):
        width = ascending[end - 1]  # the widest row of any batch ending here
        best, best_start = None, end - 1
        for start in range(end - 1, max(-1, end - 1 - max_batch), -1):
            rows = end - start
            if rows > 1 and rows * width > token_budget:
                break  # wider batches only grow from here
            candidate = cost[start] + overhead + rows * width
            if best is None or candidate < best:
                best, best_start = candidate, start
        cost[end], start_of[end] = best, best_start
    spans = []
    end = n
    while end > 0:
        spans.append((start_of[end], end))
        end = start_of[end]
    return spans[::-1]
