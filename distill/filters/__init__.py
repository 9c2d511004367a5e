"""One small class per filter; answer.py is the one definition of "correct"."""
