"""What a `causal_lm` recipe, and the rows its data made, must satisfy before anything is trained: one chunk size,
per-token terms on one tokenization, no teacher cache beside generated responses, and rows that sampling can read."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from distill.config.schema import Recipe
from distill.errors import DistillError
from distill.tasks.loss_terms import LOSSES, consumes
from distill.tasks.policy import check_prompts
from losses.consumes import TOKEN_FEATURES, TOKEN_LOGITS

if TYPE_CHECKING:  # the task module imports this one
    from distill.tasks.causal_lm import CausalLMSettings


def term_chunk_sizes(recipe: Recipe) -> dict[str, int]:
    """The chunk sizes the recipe's loss terms set themselves (`loss.terms.<name>.chunk_size`), by term."""
    return {name: term["chunk_size"] for name, term in recipe.loss.terms.items() if term.get("chunk_size") is not None}


def chunk_size(recipe: Recipe, settings: CausalLMSettings) -> int | None:
    """The task's one chunk size: `causal_lm.chunk_size`, else the one its token terms set (`check` refuses two)."""
    return settings.chunk_size or next(iter(term_chunk_sizes(recipe).values()), None)


def check_data(data: Any, settings: CausalLMSettings) -> None:
    """Generated responses need rows that start with a prompt and hold one conversation each."""
    if settings.mode == "off_policy":
        return
    rows = data.train_set.tensors
    if "position_ids" in rows:
        raise DistillError(
            f"causal_lm.mode {settings.mode} samples one answer per row, and data.packing puts several conversations "
            "in a row: set data.packing=false"
        )
    check_prompts(rows["labels"], settings.mode)


def check(recipe: Recipe, settings: CausalLMSettings, fail: Callable[[str, str], Exception]) -> None:
    """One chunk size: the terms' and `causal_lm.chunk_size` may not differ. Per-token terms need both models on the
    same tokens: refused beside a teacher tokenizer of its own. The teacher cache holds outputs on the data's
    responses: refused beside generated ones."""
    given = {f"loss.terms.{name}.chunk_size": size for name, size in term_chunk_sizes(recipe).items()}
    if settings.chunk_size is not None:
        given["causal_lm.chunk_size"] = settings.chunk_size
    if len(set(given.values())) > 1:  # CE and the token terms share one chunk loop: one size, never one ignored
        written = ", ".join(f"{key} {value}" for key, value in given.items())
        raise fail(
            next(iter(given)),
            f"differs: task causal_lm runs CE and every token term in one chunk loop of one size ({written}); "
            "set causal_lm.chunk_size alone",
        )
    if settings.mode != "off_policy" and recipe.teacher is not None and recipe.teacher.cache is not None:
        raise fail(
            "teacher.cache",
            f"stores the teacher's outputs on the data's responses; causal_lm.mode {settings.mode} trains on "
            "generated ones: drop teacher.cache or use mode off_policy",
        )
    if not recipe.data.get("teacher_tokenizer"):
        return
    for name, term in recipe.loss.terms.items():
        if consumes(LOSSES.get(term["loss"]), term["loss"]).kind in (TOKEN_LOGITS, TOKEN_FEATURES):
            raise fail(
                f"loss.terms.{name}",
                "compares teacher and student token by token, but data.teacher_tokenizer gives the teacher other "
                "tokens: use gld, which works across tokenizers, or drop the teacher's own tokenizer",
            )
