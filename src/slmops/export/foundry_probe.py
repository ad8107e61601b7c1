"""Stand-alone probe run inside Foundry Local's own runtime: register a local model folder offline, chat once, print JSON.

It imports nothing from slmops, because it runs under the Python that has ``foundry-local-sdk``
installed (which pins its own onnxruntime, so it usually lives in a separate virtual environment).
:func:`slmops.export.foundry_check.check_in_foundry` runs it as a subprocess::

    python foundry_probe.py --model-dir DIR --model-id NAME:VERSION --work DIR --messages JSON --max-tokens N

The last line of its output is ``FOUNDRY_PROBE_RESULT {...}`` with the reply text, finish reason,
token usage and what Foundry Local's catalog reports about the model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

MARKER = "FOUNDRY_PROBE_RESULT "


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--model-id", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--messages", required=True, help="JSON list of {role, content}")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--task", default="chat-completion")
    args = ap.parse_args(argv)

    import foundry_local_sdk as fl

    t0 = time.perf_counter()
    cfg = fl.Configuration(app_name="slmops_probe", app_data_dir=f"{args.work}/data", model_cache_dir=f"{args.work}/cache",
                           logs_dir=f"{args.work}/logs", log_level=fl.LogLevel.WARNING, disable_nonessential_telemetry=True)
    fl.FoundryLocalManager.initialize(cfg)
    catalog = fl.FoundryLocalManager.instance.get_catalog(fl.CatalogType.LOCAL)
    with fl.ModelInfoBuilder() as info:
        info.set_string_property("task", args.task)
        model = catalog.register_model(model_path=args.model_dir, model_id=args.model_id, metadata=info)
    model.load()
    load_s = time.perf_counter() - t0
    builders = {"user": fl.MessageItem.user, "system": fl.MessageItem.system, "assistant": fl.MessageItem.assistant}
    text, finish, usage = "", None, None
    with fl.ChatSession(model) as session:
        session.set_options(fl.RequestOptions(search=fl.SearchOptions(temperature=0.0, max_output_tokens=args.max_tokens)))
        request = fl.Request()
        for m in json.loads(args.messages):
            request.add_item(builders[m["role"]](m["content"]))
        with request, session.process_request(request) as response:
            for item in response:
                if isinstance(item, fl.MessageItem):
                    text += "".join(p.text for p in item.parts if isinstance(p, fl.TextItem))
                elif isinstance(item, fl.TextItem):
                    text += item.text
            finish = getattr(response.finish_reason, "name", str(response.finish_reason)).lower()
            u = response.get_usage()
            usage = {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens}
    result = {
        "model_id": model.id,
        "context_length": model.context_length,
        "text": text,
        "finish_reason": finish,
        "usage": usage,
        "load_s": load_s,
        "sdk_version": fl.__version__,
    }
    model.unload()
    sys.stdout.write(MARKER + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
