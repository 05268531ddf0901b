"""The draft's elastic visual compressor (SpecVLM): primitives, the question-aware gate, and the rows they make."""

from distill.models.compressor.compressor import VisualCompressor
from distill.models.compressor.primitives import PRIMITIVES
from distill.models.compressor.rows import DraftInputs
from distill.models.compressor.settings import CompressorSettings

__all__ = ["PRIMITIVES", "CompressorSettings", "DraftInputs", "VisualCompressor"]
