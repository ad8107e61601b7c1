"""The HTTP routes: thin handlers that parse, call :class:`~slmops.serve.service.Service`, and shape the answer."""
