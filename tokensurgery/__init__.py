"""tokensurgery: tokenizer and representation surgery on pretrained language models."""

from .errors import TokenSurgeryError
from .vocabulary import TokenKind, Vocabulary
from .vocab_map import VocabMap

__all__ = ["TokenSurgeryError", "TokenKind", "Vocabulary", "VocabMap"]
__version__ = "0.1.0"
