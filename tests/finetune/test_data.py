"""Training data: deterministic order, packing that keeps examples apart, validation carving, record checks."""

from __future__ import annotations

import pytest

from slmops.data.templates import IGNORE_INDEX
from slmops.finetune.data import Sequence, collate, epoch_batches, pack, steps_per_epoch


def test_epoch_order_is_seeded_and_sharded() -> None:
    a = epoch_batches(10, 4, seed=1, epoch=0)
    assert a == epoch_batches(10, 4, seed=1, epoch=0) and a != epoch_batches(10, 4, seed=1, epoch=1)
    assert sorted(i for b in a for i in b) == list(range(10)) and [len(b) for b in a] == [4, 4, 2]
    r0, r1 = (epoch_batches(10, 2, seed=1, epoch=0, rank=r, world=2) for r in (0, 1))
    assert len(r0) == len(r1) == 2 and not {i for b in r0 for i in b} & {i for b in r1 for i in b}
    assert steps_per_epoch(10, 4, 2) == 2


def test_pack_keeps_whole_examples_and_drops_cross_boundary_labels() -> None:
    exs = [Sequence([1, 2, 3], [IGNORE_INDEX, 2, 3]), Sequence([1, 4], [IGNORE_INDEX, 4]), Sequence([1, 5, 6, 7], [5, 5, 6, 7])]
    packed = pack(exs, 6)
    assert [p.input_ids for p in packed] == [[1, 2, 3, 1, 4], [1, 5, 6, 7]]
    assert packed[0].position_ids == [0, 1, 2, 0, 1]
    assert packed[1].labels[0] == IGNORE_INDEX
    batch = collate(packed, pad_id=0)
    assert "attention_mask" not in batch and batch["position_ids"][1].tolist() == [0, 1, 2, 3, 0]


def test_packed_rows_compute_the_same_loss_as_separate_examples(ft_store, base) -> None:
    """Restarted positions give a block-diagonal mask: packing changes no example's loss."""
    import torch

    from slmops.finetune.evaluation import forward_logits, token_loss_sum
    from slmops.models.loading import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(base)
    texts = ["Where is my order #123?", "Please cancel the blender order now."]
    exs = [Sequence(ids := tok(t)["input_ids"], list(ids)) for t in texts]
    with torch.no_grad():
        separate = sum(token_loss_sum(forward_logits(model, collate([e], tok.pad_token_id), "cpu"), collate([e], 0)["labels"])[0] for e in exs)
        packed = pack(exs, 64)
        assert len(packed) == 1
        b = collate(packed, tok.pad_token_id)
        together = token_loss_sum(forward_logits(model, b, "cpu"), b["labels"])[0]
    # packing drops the first label of each example; the unpacked rows never score position 0 either
    assert float(together) == pytest.approx(float(separate), rel=1e-5)


def test_unsplit_data_gets_a_seeded_validation_split(store, tmp_path) -> None:
    from slmops.finetune.config import make_config
    from slmops.finetune.data import load_records
    from slmops.stage.inputs import resolve_input

    f = tmp_path / "d.jsonl"
    f.write_text("".join(f'{{"input": "q{i}", "output": "a{i}"}}\n' for i in range(40)))
    art = resolve_input(str(f), store, kind="dataset")
    train, val, where = load_records(art, make_config("lora", {"validation_fraction": 0.25}))
    assert (len(train), len(val)) == (30, 10) and where.startswith("0.25")
    again = load_records(art, make_config("lora", {"validation_fraction": 0.25}))
    assert [r.to_json() for r in again[1]] == [r.to_json() for r in val]


@pytest.mark.parametrize("arch", ["llama", "phi3"])
def test_logits_only_at_answer_positions_give_the_same_loss(arch: str, ft_store, task) -> None:
    """Projecting only the positions that predict an answer token changes nothing but the cost."""
    import torch

    from slmops.finetune.config import make_config
    from slmops.finetune.data import build_data
    from slmops.finetune.evaluation import answer_loss_sum, can_select_logits
    from slmops.models.loading import load_model_and_tokenizer
    from slmops.testing.tiny import tiny_model

    model, tok = load_model_and_tokenizer(tiny_model(arch, store=ft_store))
    assert can_select_logits(model)
    rows = build_data(tok, task, make_config("lora", {}), max_length=256).validation[:4]
    for packed in (False, True):
        batch = collate(pack(rows, 256) if packed else rows, tok.pad_token_id)
        with torch.no_grad():
            full, full_ok = answer_loss_sum(model, batch, "cpu", select=False, accuracy=True)
            some, some_ok = answer_loss_sum(model, batch, "cpu", select=True, accuracy=True)
        assert float(some) == pytest.approx(float(full), rel=1e-5) and int(some_ok) == int(full_ok)
