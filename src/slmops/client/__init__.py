"""One OpenAI-compatible HTTP client for every caller: the distillation teacher, eval targets, the serve smoke check,
monitor's judge, the HTTP load generator and ``slmops chat``.

``http.py`` the clients (retries with backoff and ``Retry-After``, auth, timeouts, streams);
``errors.py`` the OpenAI error shape read into :class:`ClientError`, URL normalisation, auth headers;
``retry.py`` the retry policy; ``sse.py`` server-sent-events parsing.
"""

from slmops.client.errors import ClientError, ServerUnreachable, auth_headers, error_detail, normalize_base_url
from slmops.client.http import MALFORMED, Answer, AsyncOpenAIClient, Failure, OpenAIClient, chat_body, encode_body, is_chat_completion
from slmops.client.retry import RETRY_STATUS, Retry, backoff_delay, parse_retry_after
from slmops.client.sse import delta_text, iter_chunks, parse_sse_line

__all__ = [
    "MALFORMED", "RETRY_STATUS", "Answer", "AsyncOpenAIClient", "ClientError", "Failure", "OpenAIClient", "Retry", "ServerUnreachable",
    "auth_headers", "backoff_delay", "chat_body", "delta_text", "encode_body", "error_detail", "is_chat_completion", "iter_chunks",
    "normalize_base_url", "parse_retry_after", "parse_sse_line",
]
