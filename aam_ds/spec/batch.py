"""The batch plan: global batch = micro batch x gradient accumulation x world size, resolved once.

The run spec resolves it when it is validated (``parallel``: any two of the three sizes, the third
derived; none given: :data:`DEFAULT_MICRO_BATCH` x 1); the launch checks it against the ranks it
got (:meth:`BatchPlan.launched`); the micro-batch search replaces the micro batch
(:meth:`BatchPlan.with_micro`); the DeepSpeed config takes its keys from it
(:meth:`BatchPlan.ds_config_entries`). Nothing else does this arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from aam_ds.errors import AamInputError

DEFAULT_MICRO_BATCH = 8  # samples per rank and forward pass when the spec gives no batch size (or only the accumulation)
BATCH_FIELDS = ("global_batch_size", "micro_batch_size", "grad_accum_steps")


@dataclass(frozen=True)
class BatchPlan:
    """Samples per optimizer step over all ranks (``global_batch_size``), per forward pass on one rank
    (``micro_batch_size``), forward passes per step (``grad_accum_steps``), ranks (``world_size``);
    ``global = micro x accumulation x world`` always holds."""

    global_batch_size: int
    micro_batch_size: int
    grad_accum_steps: int
    world_size: int

    def __post_init__(self) -> None:
        if self.global_batch_size != self.micro_batch_size * self.grad_accum_steps * self.world_size:
            raise ValueError(f"inconsistent batch plan {self}")

    @classmethod
    def resolve(
        cls, global_batch_size: int | None, micro_batch_size: int | None, grad_accum_steps: int | None, world_size: int
    ) -> "BatchPlan":
        """The plan from the sizes a spec gives (None: not given) and the world size.

        Raises
        ------
        ValueError
            the given sizes cannot be met (message names the ``parallel.*`` fields and the fix;
            the spec reports it as an AamInputError).
        """
        g, m, a = global_batch_size, micro_batch_size, grad_accum_steps
        given = sum(v is not None for v in (g, m, a))
        if given == 0:
            m, a = DEFAULT_MICRO_BATCH, 1
        elif given == 1 and a is None:
            a = 1  # only the global or only the micro batch: no accumulation
        elif given == 1:
            m = DEFAULT_MICRO_BATCH  # only the accumulation
        if g is None:
            return cls(m * a * world_size, m, a, world_size)
        if m is None:
            _check_divisible(g, a * world_size, f"grad_accum_steps={a}", world_size)
            return cls(g, g // (a * world_size), a, world_size)
        if a is None:
            _check_divisible(g, m * world_size, f"micro_batch_size={m}", world_size)
            return cls(g, m, g // (m * world_size), world_size)
        if g != m * a * world_size:
            raise ValueError(
                f"parallel.global_batch_size={g} != micro_batch_size={m} x grad_accum_steps={a} x world size {world_size} "
                f"(= {m * a * world_size}); give only two of the three and the third is derived"
            )
        return cls(g, m, a, world_size)

    def sizes(self) -> dict[str, int]:
        """The three ``parallel.*`` batch fields."""
        return {name: getattr(self, name) for name in BATCH_FIELDS}

    @classmethod
    def launched(
        cls, global_batch_size: int, micro_batch_size: int, grad_accum_steps: int, pinned: int | None, world_size: int
    ) -> "BatchPlan":
        """The plan of a resolved spec's sizes on the ``world_size`` ranks a launch got (``pinned``:
        ``parallel.world_size`` as given, or None).

        Raises
        ------
        AamInputError
            the spec pins another world size, or its global batch was resolved for another one.
        """
        if pinned not in (None, world_size) or global_batch_size != micro_batch_size * grad_accum_steps * world_size:
            raise AamInputError(
                "parallel",
                f"global_batch_size={global_batch_size} (micro {micro_batch_size} x accumulation {grad_accum_steps}"
                f"{f', world_size={pinned}' if pinned else ''}) does not fit the {world_size} rank(s) launched",
                f"give parallel.micro_batch_size and grad_accum_steps only, or a global batch divisible by "
                f"micro x accumulation x {world_size}; unset parallel.world_size or launch that many ranks",
            )
        return cls(global_batch_size, micro_batch_size, grad_accum_steps, world_size)

    def with_micro(self, micro: int, accumulation: int | None = None) -> "BatchPlan":
        """Micro batch ``micro``; by default the global batch stays and accumulation takes up the rest
        (``micro`` must divide the per-rank batch), else ``accumulation`` is used and the global batch follows."""
        accum = accumulation or self.global_batch_size // (micro * self.world_size)
        return replace(self, micro_batch_size=micro, grad_accum_steps=accum, global_batch_size=micro * accum * self.world_size)

    @property
    def per_rank_batch(self) -> int:
        """Samples one rank sees per optimizer step (micro x accumulation)."""
        return self.micro_batch_size * self.grad_accum_steps

    def ds_config_entries(self) -> dict[str, int]:
        """DeepSpeed's batch keys; ``train_batch_size`` is left for DeepSpeed to derive, so one file serves any world size."""
        return {"train_micro_batch_size_per_gpu": self.micro_batch_size, "gradient_accumulation_steps": self.grad_accum_steps}


def _check_divisible(global_batch: int, unit: int, given: str, world_size: int) -> None:
    if global_batch % unit:
        raise ValueError(
            f"parallel.global_batch_size={global_batch} is not divisible by {given} x world size {world_size}; "
            f"choose a global batch that is a multiple of {unit}"
        )
