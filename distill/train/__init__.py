"""SFT with TRL (+PEFT), chat templates, preflight."""
