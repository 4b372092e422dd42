"""The recipes' code: one module per task, each run from the command line by the script of the same name under
recipes/. A recipe holds its task's arguments and defaults, its data preparation, and the calls of the stages every
task shares (`nlpkd.teacher_stage`, then `nlpkd.pipeline`)."""
