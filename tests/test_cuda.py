"""What only a GPU runs: decoding eager and compiled (CUDA graphs) against naive decoding, a DDP step
under NCCL, a bf16 step against fp32, a checkpoint round trip of CUDA training state. Marked `cuda`
and skipped without a GPU; `pytest -m cuda` runs them (in under 2 minutes on one GPU)."""
import contextlib
import copy

import numpy as np
import pytest
import torch

import batches
import decode
from checkpoint import build
from checkpoint_store import load_checkpoint, save_checkpoint
from conftest import make_toy_dataset, run_cli
from hparams import TrainConfig
from loss import autocast_for, loss_terms
from test_decode import naive_greedy, prompts_and_rows, run, small_model
from test_encdec import cases as encdec_cases
from test_encdec import naive_greedy as encdec_naive_greedy
from test_encdec import small_encdec
from test_speed_paths import random_split, tiny_model

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")]
GPU = torch.device("cuda", 0)


@pytest.mark.parametrize("compiled,memory", [(False, None), (False, 1), (False, 250_000), (True, None),
                                             (True, 250_000)])
def test_cuda_decoding_equals_naive_decoding(monkeypatch, compiled, memory):
    """Eager steps attending up to the furthest running row, or compiled steps over every slot under
    CUDA graphs; rows that move up lanes, wait for memory (a budget of 1 byte, and one of a few slots)
    and take the slots of finished rows: the tokens of plain greedy decoding (fp64, on the CPU)."""
    monkeypatch.setattr(decode, "first_capacity", lambda prompt_len: 16)
    model = small_model(eos_shift=-0.3)
    prompts, src = prompts_and_rows()
    ref = [naive_greedy(model, prompts[s], 70) for s in src]
    got = run(copy.deepcopy(model).to(GPU), prompts, src, 70, batch_size=3, every=2, memory=memory, compile=compiled)
    assert got == ref


@pytest.mark.parametrize("compiled", [False, True])
def test_cuda_encdec_decoding_equals_recomputing_every_step(monkeypatch, compiled):
    """The encoder-decoder on the GPU, eager and compiled (CUDA graphs), rows moving up lanes: the
    greedy tokens of recomputing everything at every step (fp64, on the CPU)."""
    monkeypatch.setattr(decode, "first_capacity", lambda prompt_len: 16)
    net = small_encdec(eos_shift=-0.3)
    sources, starts = encdec_cases(3)
    src = [0, 1, 2, 0, 1, 2, 0]
    ref = [encdec_naive_greedy(net, sources[s], starts[s], 40) for s in src]
    got = {i: (ids.tolist(), e) for i, ids, e in decode.generate(copy.deepcopy(net).to(GPU), starts, src, 40,
                                                                 batch_size=3, every=2, compile=compiled,
                                                                 sources=sources)}
    assert [got[i] for i in range(len(src))] == ref


def test_memory_budget_counts_the_caching_allocators_unused_memory():
    """Memory PyTorch holds but no tensor uses (freed activations) is free for the caches."""
    x = torch.empty(1 << 30, dtype=torch.uint8, device=GPU)
    del x  # 1 GiB back in the caching allocator, not the driver
    free = torch.cuda.mem_get_info(GPU)[0]
    assert torch.cuda.memory_reserved(GPU) - torch.cuda.memory_allocated(GPU) >= 1 << 30
    assert decode.memory_budget(GPU) >= (free + (1 << 30)) // 2


def one_step(model, autocast, x, y, plan):
    """(loss before, loss after) one fused AdamW step on this batch."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    loss, _ = loss_terms(model, x, y, plan, autocast)
    loss.backward()
    opt.step()
    with torch.no_grad():
        return loss.item(), loss_terms(model, x, y, plan, contextlib.nullcontext())[0].item()


def test_bf16_training_step_is_close_to_fp32():
    seqs = batches.Sequences.build(random_split(), np.arange(60), False)
    x, y, plan = (torch.from_numpy(a).to(GPU) for a in seqs.collate(np.arange(8)))
    model = tiny_model(dtype=torch.float32).to(GPU)
    fp32 = one_step(copy.deepcopy(model), contextlib.nullcontext(), x, y, plan)
    bf16 = one_step(copy.deepcopy(model), autocast_for(GPU, "auto"), x, y, plan)
    assert fp32[1] < fp32[0]
    assert bf16 == pytest.approx(fp32, rel=2e-2)


def test_checkpoint_round_trip_of_cuda_training_state(store):
    """Model and fused-AdamW state saved from the GPU, loaded as a resume does, train on alike."""
    cfg = TrainConfig(train_name="toy.copy", model_size="tiny", seed=3)
    seqs = batches.Sequences.build(random_split(), np.arange(60), False)
    x, y, plan = (torch.from_numpy(a).to(GPU) for a in seqs.collate(np.arange(8)))

    def step(model, opt):
        loss_terms(model, x, y, plan, contextlib.nullcontext())[0].backward()
        opt.step()
        opt.zero_grad()

    model, opt, _ = build(cfg, 40, GPU)
    step(model, opt)
    store.runs.insert_one({"_id": "gpu", "config": cfg.to_dict(), "status": "running", "step": 1, "lease": None,
                           "error": None})
    save_checkpoint(store, "gpu", 1, {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 1})
    ck = load_checkpoint(store, "gpu")
    again, opt2, _ = build(cfg, 40, GPU)
    again.load_state_dict(ck["model"])
    opt2.load_state_dict(ck["optimizer"])
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
    step(model, opt)
    step(again, opt2)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v, rtol=1e-6, atol=1e-7)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_nccl_ddp_step_equals_one_process(store):
    """Two processes on two GPUs (NCCL) train as one process on the same global batches (fp32, TF32
    matmuls as train.py sets them: close, not equal)."""
    make_toy_dataset(store.db)
    from test_train import FAST, losses, weights
    common = [*FAST, "--train-steps", "5", "--seed", "5", "--precision", "fp32"]
    one = run_cli("train.py", "single", "--run-id", "one", *common, "--batch-size", "8")
    two = run_cli("train.py", "single", "--run-id", "two", *common, "--batch-size", "4", nproc=2)
    assert "device cuda:0" in one.stdout and "world size 2" in two.stdout and "device cuda:0" in two.stdout
    for (s1, n1, l1, _), (s2, n2, l2, _) in zip(losses(store, "one"), losses(store, "two")):
        assert (s1, n1) == (s2, n2) and l1 == pytest.approx(l2, rel=1e-3)
    a, b = weights(store, "one"), weights(store, "two")
    for k in a:  # an AdamW step moves a weight by about lr (1e-3) whatever the gradient's size
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=5 * 2e-3)
