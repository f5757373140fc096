"""Network modules of emo_core (plain torch + diffusers building blocks)."""
