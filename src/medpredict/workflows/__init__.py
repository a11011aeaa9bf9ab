"""Commands that tie several concerns together: evaluate a run, tune a recipe."""
