"""Chat: the checkpoint's template, output parsing (reasoning, tool calls, boxes), grammars and results."""
