"""Where frozen models come from (a checkpoint, the teacher store, a recipe to run first) and the teacher-output
cache. Resolution returns a plan; the engine carries it out."""
