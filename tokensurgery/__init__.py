"""tokensurgery: tokenizer and representation surgery on pretrained language models."""

from .errors import TokenSurgeryError
from .vocabulary import TokenKind, Vocabulary
from .vocab_map import VocabMap
from .inputs import TokenizerInput, open_model, open_tokenizer, open_vocabulary

__all__ = ["TokenSurgeryError", "TokenKind", "TokenizerInput", "Vocabulary", "VocabMap", "open_model", "open_tokenizer",
           "open_vocabulary"]
__version__ = "0.1.0"
