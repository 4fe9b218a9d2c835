"""What a load chose, measured and checked, and why, in one object the encoder carries (`Encoder.report`)."""

from __future__ import annotations

from dataclasses import dataclass

from .onnx_runtime import PROBE_TEXTS, Int8Check
from .plan_cache import LoadRecord
from .runtimes import PackingChoice, RuntimeChoice


@dataclass(frozen=True)
class LoadReport:
    """What a load chose and why: `choice` (`choose_runtime`'s decision), `packing` (`choose_packing`'s),
    `record` (the CPU's measured or cached plan and checks; None where nothing is measured: a GPU, or torch
    pinned), where the plan came from (`source`), and, where nothing is measured, what became of packing
    (`packed_note`, the measured plan keeps its note in the record) and, on a GPU, whether passes are recorded
    in CUDA graphs (`graphs_note`)."""

    choice: RuntimeChoice
    packing: PackingChoice | None = None
    record: LoadRecord | None = None
    source: str = "nothing measured"
    packed_note: str | None = None
    graphs_note: str | None = None

    @property
    def onnx_max_abs_diff(self) -> float | None:
        """ONNX Runtime float32's largest difference to torch on `PROBE_TEXTS`, where it serves."""
        return self.record.onnx_max_abs_diff if self.record else None

    @property
    def bf16_min_cosine(self) -> float | None:
        """The bfloat16 model's least cosine to float32 on `PROBE_TEXTS`, where it serves."""
        if self.record is None or not any(r.precision == "bfloat16" for r in self.record.runtimes):
            return None
        return self.record.bf16_min_cosine

    @property
    def packed_min_cosine(self) -> float | None:
        """The packed path's least cosine to the padded path on `PROBE_TEXTS`, where packed passes serve."""
        if self.record is None or not any(r.packed for r in self.record.runtimes):
            return None
        return self.record.packed_min_cosine

    @property
    def int8_check(self) -> Int8Check | None:
        """The int8 vectors' cosine to float32 on `PROBE_TEXTS`, with E5_QUANTIZE=int8."""
        record = self.record
        if record is None or record.int8_min_cosine is None:
            return None
        return Int8Check(record.int8_texts, record.int8_min_cosine, record.int8_mean_cosine)

    def why(self) -> str:
        """Why these runtimes serve, with the accuracy checks and the record's notes, in one line."""
        plan = self.record.plan if self.record else None
        why = plan.reason if plan is not None else self.choice.reason
        checks = []
        if self.onnx_max_abs_diff is not None:
            checks.append(f"ONNX Runtime float32 within {self.onnx_max_abs_diff:.1e} of torch")
        if self.bf16_min_cosine is not None:
            checks.append(f"bfloat16 min cosine to float32 {self.bf16_min_cosine:.6f}")
        if self.packed_min_cosine is not None:
            checks.append(f"packed min cosine to padded {self.packed_min_cosine:.6f}")
        if (int8 := self.int8_check) is not None:
            checks.append(f"int8 cosine to float32 min {int8.min_cosine:.4f}, mean {int8.mean_cosine:.4f}")
        if checks:
            why += f"; on {len(PROBE_TEXTS)} probe texts: " + ", ".join(checks)
        notes = self.record.notes if self.record else tuple(filter(None, [self.packed_note, self.graphs_note]))
        return "; ".join([why, *notes])
