"""OminiX: open, reproducible pretraining of LLaMA-style models through ColossalAI."""

__version__ = "0.1.0"
