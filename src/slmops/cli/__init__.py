"""The command line: thin verbs that parse, call the library and render."""
