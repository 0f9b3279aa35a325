"""The transformers drop-in: supported families only, stateless calls, hidden states,
copy/pickle/save/reload, Trainer, bad input. Tiny random models, fp32, eval mode."""
import copy
import io
import threading
from contextlib import nullcontext

import pytest
import torch
import transformers as tf

from adaptive_encoder import apply_adaptive_encoder, encoder
from adaptive_encoder.dense import masked_forward
from adaptive_encoder.depth.mi import TokenDepthLookup
from adaptive_encoder.families import SUPPORTED

SMALL = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48,
             vocab_size=120, max_position_embeddings=64)
FAMILY_MODELS = {
    "bert": lambda: tf.BertModel(tf.BertConfig(**SMALL)),
    "roberta": lambda: tf.RobertaModel(tf.RobertaConfig(**SMALL)),
    "xlm-roberta": lambda: tf.XLMRobertaModel(tf.XLMRobertaConfig(**SMALL)),
    "camembert": lambda: tf.CamembertModel(tf.CamembertConfig(**SMALL)),
    "electra": lambda: tf.ElectraModel(tf.ElectraConfig(embedding_size=24, **SMALL)),  # with embeddings_project
    "mpnet": lambda: tf.MPNetModel(tf.MPNetConfig(**SMALL)),
    "distilbert": lambda: tf.DistilBertModel(tf.DistilBertConfig(vocab_size=120, dim=32, n_layers=3, n_heads=4,
                                                                 hidden_dim=48, max_position_embeddings=64)),
}


def _inputs(B=3, T=10, N=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 120, (B, T), generator=gen)
    lengths = torch.tensor([T, T - 3, 2])[:B]
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    depths = torch.randint(1, N + 1, (B, T), generator=gen)
    return ids, mask, depths


def _encoder_input(plain, ids, mask):
    """The (B,T,D) tensor the unpatched model hands its encoder (embeddings, ELECTRA's projection)."""
    seen = {}
    enc = plain.transformer if plain.config.model_type == "distilbert" else plain.encoder
    def grab(module, args, kwargs):
        seen["x"] = args[0] if args else kwargs["hidden_states"]

    hook = enc.register_forward_pre_hook(grab, with_kwargs=True)
    with torch.no_grad():
        plain(input_ids=ids, attention_mask=mask)
    hook.remove()
    return seen["x"]


def _close_on_real(a, b, mask, tol=1e-5):
    m = mask.bool()
    torch.testing.assert_close(a[m], b[m], rtol=tol, atol=tol)


@pytest.mark.parametrize("family", sorted(FAMILY_MODELS))
def test_each_family_matches_transformers_and_dense_reference(family):
    torch.manual_seed(0)
    model = FAMILY_MODELS[family]().eval()
    plain = copy.deepcopy(model)
    ids, mask, depths = _inputs()
    apply_adaptive_encoder(model)
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask).last_hidden_state
        ref_full = plain(input_ids=ids, attention_mask=mask).last_hidden_state
        mixed = model(input_ids=ids, attention_mask=mask, depths=depths).last_hidden_state
        ref_mixed = masked_forward(plain, _encoder_input(plain, ids, mask), depths, mask)
    _close_on_real(full, ref_full, mask)
    _close_on_real(mixed, ref_mixed, mask)
    assert not torch.allclose(mixed[mask.bool()], full[mask.bool()], atol=1e-3)  # the depths were used
    assert model.state_dict().keys() == plain.state_dict().keys()


def _unsupported():
    """(name, model) of transformers models the adapter must refuse; built only if constructible."""
    makers = {
        "roformer": lambda: tf.RoFormerModel(tf.RoFormerConfig(embedding_size=32, **SMALL)),
        "megatron-bert": lambda: tf.MegatronBertModel(tf.MegatronBertConfig(**SMALL)),
        "xlm-roberta-xl": lambda: tf.XLMRobertaXLModel(tf.XLMRobertaXLConfig(**SMALL)),
        "esm": lambda: tf.EsmModel(tf.EsmConfig(pad_token_id=1, **SMALL)),
        "rembert": lambda: tf.RemBertModel(tf.RemBertConfig(input_embedding_size=32, output_embedding_size=32,
                                                              **SMALL)),
        "convbert": lambda: tf.ConvBertModel(tf.ConvBertConfig(embedding_size=32, **SMALL)),
        "luke": lambda: tf.LukeModel(tf.LukeConfig(entity_vocab_size=10, entity_emb_size=16, **SMALL)),
        "deberta-v2": lambda: tf.DebertaV2Model(tf.DebertaV2Config(**SMALL)),
        "bert-decoder": lambda: tf.BertModel(tf.BertConfig(is_decoder=True, **SMALL)),
        "bert-relative": lambda: tf.BertModel(tf.BertConfig(position_embedding_type="relative_key", **SMALL)),
    }
    built = []
    for name, make in makers.items():
        built.append((name, make))
    return built


@pytest.mark.parametrize("name,make", _unsupported(), ids=[n for n, _ in _unsupported()])
def test_unsupported_models_are_refused_before_any_change(name, make):
    model = make().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modules = [type(m) for m in model.modules()]
    hooks = sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())
    with pytest.raises(ValueError, match="not supported|cannot run") as info:
        apply_adaptive_encoder(model)
    if name in ("bert-decoder", "bert-relative", "mpnet-head"):
        assert "bert" in str(info.value)
    else:
        assert "supported: " + ", ".join(SUPPORTED) in str(info.value)
    assert [type(m) for m in model.modules()] == modules
    assert sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules()) == hooks
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def _left_padded(B=3, T=10):
    ids, mask, depths = _inputs(B, T)
    return ids, mask.flip(1), depths  # the same lengths, padding first


@pytest.mark.parametrize("family", sorted(FAMILY_MODELS))
def test_left_padding_is_refused_only_where_position_0_is_read(family):
    """Padding is never computed, so its state is not transformers'. Poolers and sequence
    classification heads read position 0: with a sequence starting with padding they would
    silently differ, so the call is refused; a model that reads no such state stays exact."""
    torch.manual_seed(0)
    base = FAMILY_MODELS[family]().eval()
    head_cls = getattr(tf, type(base).__name__.replace("Model", "ForSequenceClassification"))
    head = head_cls(base.config).eval()
    ids, left, _ = _left_padded()
    right = left.flip(1)
    has_pooler = getattr(base, "pooler", None) is not None
    plain_base, plain_head = copy.deepcopy(base), copy.deepcopy(head)
    apply_adaptive_encoder(base)
    apply_adaptive_encoder(head)
    with torch.no_grad():
        if has_pooler:
            with pytest.raises(ValueError, match=r"sequence 1 starts with padding .* pooler reads position 0"):
                base(input_ids=ids, attention_mask=left)
        else:  # exact on the real tokens, left padding or not
            _close_on_real(base(input_ids=ids, attention_mask=left).last_hidden_state,
                           plain_base(input_ids=ids, attention_mask=left).last_hidden_state, left)
        with pytest.raises(ValueError, match="sequence 1 starts with padding"):
            head(input_ids=ids, attention_mask=left)
        # Right padding: the head's logits are transformers' own (no false refusal).
        torch.testing.assert_close(head(input_ids=ids, attention_mask=right).logits,
                                   plain_head(input_ids=ids, attention_mask=right).logits, rtol=1e-5, atol=1e-5)


def test_backend_name_is_checked_when_built_not_at_the_first_call():
    from adaptive_encoder import AdaptiveEncoder
    from adaptive_encoder.patch import is_patched

    torch.manual_seed(0)
    model = FAMILY_MODELS["bert"]().eval()
    for bad in ("reference", "CUDA", ""):
        with pytest.raises(ValueError, match=f"unknown backend {bad!r}"):
            AdaptiveEncoder.from_model(model, backend=bad)
        with pytest.raises(ValueError, match="unknown backend"):
            apply_adaptive_encoder(model, backend=bad)
        assert not is_patched(model)
    enc = AdaptiveEncoder.from_model(model, backend="torch")
    ids, mask, depths = _inputs()
    x = _encoder_input(model, ids, mask)
    with pytest.raises(ValueError, match="unknown backend 'reference'"):
        enc(x, depths, mask, backend="reference")


def test_token_classification_accepts_left_padding():
    torch.manual_seed(0)
    model = tf.BertForTokenClassification(tf.BertConfig(**{**SMALL, "num_labels": 3})).eval()  # no pooler
    plain = copy.deepcopy(model)
    apply_adaptive_encoder(model)
    ids, left, depths = _left_padded()
    with torch.no_grad():
        _close_on_real(model(input_ids=ids, attention_mask=left).logits,
                       plain(input_ids=ids, attention_mask=left).logits, left)
        model(input_ids=ids, attention_mask=left, depths=depths * left)


def _patched_bert(seed=0, **cfg):
    torch.manual_seed(seed)
    model = tf.BertForSequenceClassification(tf.BertConfig(**{**SMALL, "num_labels": 3, **cfg})).eval()
    plain = copy.deepcopy(model)
    apply_adaptive_encoder(model)
    return model, plain


def test_threads_with_different_depths_each_get_their_own_result():
    model, _ = _patched_bert()
    ids, mask, _ = _inputs()
    _assert_threads_get_their_own_results(model, ids, mask, calls=40)


def _assert_threads_get_their_own_results(model, ids, mask, calls: int):
    """Two threads share `model`, one with every depth 1 and one with every depth 3."""
    shallow, deep = torch.ones_like(ids), torch.full_like(ids, 3)
    with torch.no_grad():
        expect = {1: model(ids, attention_mask=mask, depths=shallow).logits,
                  3: model(ids, attention_mask=mask, depths=deep).logits}
    assert not torch.allclose(expect[1], expect[3])
    wrong = []

    def worker(d, depths):
        for _ in range(calls):
            with torch.no_grad():
                if not torch.equal(model(ids, attention_mask=mask, depths=depths).logits, expect[d]):
                    wrong.append(d)

    threads = [threading.Thread(target=worker, args=a) for a in ((1, shallow), (3, deep))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []


def test_failed_call_leaves_nothing_behind():
    model, _ = _patched_bert()
    ids, mask, depths = _inputs()
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits
        with pytest.raises(ValueError, match="depths"):
            model(ids, attention_mask=mask, depths=depths + 10)
        assert torch.equal(model(ids, attention_mask=mask).logits, full)  # not the bad call's depths


def test_deepcopy_and_pickle_keep_the_model_patched():
    model, plain = _patched_bert()
    lookup = TokenDepthLookup(torch.randint(1, 4, (120,)), 3)
    apply_adaptive_encoder(plain, depth_fn=lookup)  # a second model, patched with a depth table
    ids, mask, depths = _inputs()
    with torch.no_grad():
        expect = model(ids, attention_mask=mask, depths=depths).logits
        expect_fn = plain(ids, attention_mask=mask).logits
        buf = io.BytesIO()
        torch.save(model, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        buf = io.BytesIO()
        torch.save(plain, buf)
        buf.seek(0)
        loaded_fn = torch.load(buf, weights_only=False)
        for m, m_fn in ((copy.deepcopy(model), copy.deepcopy(plain)), (loaded, loaded_fn)):
            assert torch.equal(m(ids, attention_mask=mask, depths=depths).logits, expect)
            assert torch.equal(m_fn(ids, attention_mask=mask).logits, expect_fn)


def test_hidden_states_follow_eq5_and_attentions_are_refused():
    model, plain = _patched_bert()
    ids, mask, depths = _inputs()
    depths[0] = 2  # no token of sequence 0 reaches layer 3
    with torch.no_grad():
        out = model(ids, attention_mask=mask, depths=depths, output_hidden_states=True)
        x = _encoder_input(plain.bert, ids, mask)
        last = model.bert(ids, attention_mask=mask, depths=depths).last_hidden_state
        states = out.hidden_states
        assert len(states) == 4 and all(s.shape == x.shape for s in states)
        _close_on_real(states[0], x, mask)
        for n in (1, 2, 3):  # after layer n a token of depth d holds its state after layer min(d, n)
            _close_on_real(states[n], masked_forward(plain.bert, x, depths.clamp(max=n), mask), mask)
        _close_on_real(states[3], last, mask)
        # Layers above the deepest token repeat the last state.
        shallow = model.bert(ids, attention_mask=mask, depths=torch.ones_like(ids), output_hidden_states=True)
        assert shallow.hidden_states[2] is shallow.hidden_states[1] or \
            torch.equal(shallow.hidden_states[2], shallow.hidden_states[1])
        with pytest.raises(ValueError, match="output_attentions"):
            model(ids, attention_mask=mask, output_attentions=True)
        with pytest.raises(ValueError, match="return_dict"):
            model.bert(ids, attention_mask=mask, output_hidden_states=True, return_dict=False)


def test_gradient_checkpointing_is_honoured():
    grads, calls = [], []
    for ckpt in (False, True):
        model, _ = _patched_bert(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        model.train()
        if ckpt:
            (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
        counter = []
        model.bert.encoder.layer[0].intermediate.register_forward_hook(lambda *a: counter.append(1))
        ids, mask, depths = _inputs()
        loss = model(ids, attention_mask=mask, depths=depths, labels=torch.tensor([0, 1, 2])).loss
        loss.backward()
        grads.append(model.bert.encoder.layer[0].attention.self.query.weight.grad.clone())
        calls.append(len(counter))
    assert calls == [1, 2]  # recomputed in backward
    torch.testing.assert_close(grads[0], grads[1])


def test_save_pretrained_round_trip_with_depth_table(tmp_path):
    model, plain = _patched_bert()
    lookup = TokenDepthLookup(torch.randint(1, 4, (120,)), 3)
    apply_adaptive_encoder(plain, depth_fn=lookup)
    ids, mask, _ = _inputs()
    with torch.no_grad():
        expect = plain(ids, attention_mask=mask).logits
    assert plain.state_dict().keys() == model.state_dict().keys()  # no depth_fn keys
    plain.save_pretrained(tmp_path)
    lookup.save(tmp_path)
    reloaded = apply_adaptive_encoder(tf.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval(),
                                      depth_fn=TokenDepthLookup.load(tmp_path))
    with torch.no_grad():
        assert torch.equal(reloaded(ids, attention_mask=mask).logits, expect)
    with pytest.raises(FileNotFoundError, match="depth_table.json"):
        TokenDepthLookup.load(tmp_path / "nowhere")


def test_bad_depths_give_clear_errors():
    model, _ = _patched_bert()
    ids, mask, depths = _inputs()
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"depths has shape \(3, 9\).*\(3, 10\)"):
            model(ids, attention_mask=mask, depths=depths[:, :9])
        with pytest.raises(TypeError, match="integer tensor"):
            model(ids, attention_mask=mask, depths=depths.float())
        with pytest.raises(ValueError, match="depths is on meta"):
            model(ids, attention_mask=mask, depths=depths.to("meta"))
        with pytest.raises(ValueError, match=r"depth 13 at \(batch 0, position 0\)"):
            model(ids, attention_mask=mask, depths=torch.where(torch.arange(10) == 0, 13, depths))
        # an additive mask, which transformers itself reads inverted without a word
        with pytest.raises(ValueError, match="additive mask"):
            model(ids, attention_mask=(1.0 - mask.float()) * -1e4, depths=depths)
    lookup = TokenDepthLookup(torch.randint(1, 4, (120,)), 3)
    _, fn_model = _patched_bert()
    apply_adaptive_encoder(fn_model, depth_fn=lookup)
    embeds = fn_model.bert.embeddings.word_embeddings(ids)
    with torch.no_grad(), pytest.raises(ValueError, match="inputs_embeds"):
        fn_model(inputs_embeds=embeds, attention_mask=mask)
    with torch.no_grad():  # with depths= given, inputs_embeds works
        fn_model(inputs_embeds=embeds, attention_mask=mask, depths=depths)


def _tiny_tokenizer(tmp_path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(115)]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return tf.BertTokenizerFast.from_pretrained(str(tmp_path))


def test_trainer_with_depth_collator_trains_adaptively(tmp_path):
    from adaptive_encoder.collate import DepthCollator

    tok = _tiny_tokenizer(tmp_path)
    gen = torch.Generator().manual_seed(0)
    examples = []
    for i in range(32):  # label = whether word w0 occurs: learnable in a few steps
        words = [f"w{int(w)}" for w in torch.randint(0, 20, (int(torch.randint(3, 9, (1,), generator=gen)),),
                                                     generator=gen)]
        label = int("w0" in words or i % 2 == 0)
        if label and "w0" not in words:
            words[0] = "w0"
        enc = tok(" ".join(words))
        depths = [3 if t in (tok.cls_token_id, tok.convert_tokens_to_ids("w0")) else 1 for t in enc["input_ids"]]
        examples.append({**enc, "depths": depths, "labels": label})
    model, _ = _patched_bert(num_labels=2)
    rows = []
    model.bert.encoder.layer[1].intermediate.register_forward_hook(lambda m, a, o: rows.append(a[0].shape[0]))
    args = tf.TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, max_steps=24,
                                learning_rate=3e-3, logging_steps=4, report_to=[], use_cpu=True,
                                remove_unused_columns=False, save_strategy="no", seed=0)
    collator = DepthCollator(tok)
    batch = collator(examples[:8])
    assert batch["depths"].shape == batch["input_ids"].shape and (batch["depths"][batch["attention_mask"] == 0] == 0).all()
    trainer = tf.Trainer(model=model, args=args, train_dataset=examples, data_collator=collator)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < losses[0]
    real_tokens = sum(int(torch.tensor(e["attention_mask"]).sum()) for e in examples) * 24 * 8 / len(examples)
    assert 0 < sum(rows) < 0.6 * real_tokens  # layer 2 computed only the deep tokens
    with pytest.raises(KeyError, match="remove_unused_columns"):
        collator([{k: v for k, v in examples[0].items() if k != "depths"}])


def test_torch_compile_does_not_recompile_per_depth_pattern():
    """The plan is computed outside the graph; the layers are traced with its counts as
    dynamic sizes. After warm-up (static -> dynamic), new depth patterns with the same
    deepest layer compile nothing new; outputs equal eager."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    model, _ = _patched_bert()
    ids, mask, _ = _inputs(T=12)
    counter = CompileCounter()
    compiled = torch.compile(lambda i, m, d: model.bert(i, attention_mask=m, depths=d).last_hidden_state,
                             backend=counter)
    frames = []
    with torch.no_grad():
        for seed in range(7):
            d = torch.randint(1, 4, ids.shape, generator=torch.Generator().manual_seed(seed))
            d[:, 0] = 3  # same deepest layer: the loop over layers has the same length
            _close_on_real(compiled(ids, mask, d), model.bert(ids, attention_mask=mask, depths=d).last_hidden_state,
                           mask)
            frames.append(counter.frame_count)
    assert frames[-1] == frames[2], frames  # nothing compiled after warm-up
    torch._dynamo.reset()


def test_torch_compile_breaks_only_at_the_plan():
    """The forward's one graph-break site is the plan (data-dependent sizes, computed eagerly).
    Dynamo repeats a break in every frame on the call stack, so explain counts one per frame,
    but every reason is that one function; the per-call context variable (MPNet's route) is not
    read for families whose models pass **kwargs down (it was a second break site)."""
    torch._dynamo.reset()
    model, _ = _patched_bert()
    ids, mask, depths = _inputs(T=12)
    with torch.no_grad():
        ex = torch._dynamo.explain(lambda i, m, d: model.bert(i, attention_mask=m, depths=d).last_hidden_state)(
            ids, mask, depths)
    assert ex.graph_break_count >= 1
    assert all("_eager_plan" in r.reason for r in ex.break_reasons), \
        [r.reason.splitlines()[0] for r in ex.break_reasons]
    torch._dynamo.reset()


_TRACED_PLAN = dict(capture_scalar_outputs=True, capture_dynamic_output_shape_ops=True)


@pytest.mark.parametrize("B", [1, 3])
def test_torch_compile_fullgraph_with_the_traced_plan(B):
    """With Dynamo's scalar and dynamic-shape capture on, the plan is traced (unbacked sizes):
    one graph for the whole forward (fullgraph=True), compiled once for every depth pattern,
    a different deepest layer included, with eager dense layers switched on too (not traced);
    outputs equal eager; bad depths fail the graph's asserts."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    model, _ = _patched_bert()
    ids, mask, _ = _inputs(B=B, T=12)
    counter = CompileCounter()
    f = lambda i, m, d: model.bert(i, attention_mask=m, depths=d).last_hidden_state  # noqa: E731
    with torch._dynamo.config.patch(**_TRACED_PLAN), torch.no_grad(), encoder.dense_layers():
        compiled = torch.compile(f, backend=counter, fullgraph=True)
        for seed in range(6):
            d = torch.randint(1, 4, ids.shape, generator=torch.Generator().manual_seed(seed))
            d = d.clamp(max=1 + seed % 3)  # deepest layer 1, 2, 3, 1, ...
            _close_on_real(compiled(ids, mask, d), f(ids, mask, d), mask)
        assert counter.frame_count == 1, counter.frame_count
        with pytest.raises(RuntimeError):
            compiled(ids, mask, d + 5)
    torch._dynamo.reset()


def test_torch_compile_traced_plan_trains_like_eager():
    """A training step (loss and gradients through the compact layers) compiled as one graph
    with the traced plan equals eager, for several depth patterns."""
    torch._dynamo.reset()
    model, _ = _patched_bert(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model.train()
    twin = copy.deepcopy(model)
    ids, mask, _ = _inputs(T=12)
    labels = torch.tensor([0, 2, 1])

    def loss(m, d):
        return m(ids, attention_mask=mask, depths=d, labels=labels).loss

    with torch._dynamo.config.patch(**_TRACED_PLAN):
        compiled = torch.compile(lambda d: loss(model, d), fullgraph=True, backend="aot_eager")
        for seed in range(3):
            d = torch.randint(1, 4, ids.shape, generator=torch.Generator().manual_seed(seed)).clamp(max=2 + seed % 2)
            compiled(d).backward()
            loss(twin, d).backward()
            for (name, p), q in zip(model.named_parameters(), twin.parameters()):
                if q.grad is not None:
                    torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=name)
            model.zero_grad()
            twin.zero_grad()
    torch._dynamo.reset()


def test_torch_compile_traced_plan_with_inductor_and_export():
    """The traced plan through inductor (generated code, not just the graph) and torch.export:
    both equal eager for depth patterns other than the one traced."""
    torch._dynamo.reset()
    model, _ = _patched_bert()
    ids, mask, depths = _inputs(T=12)

    class Encoder(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, i, m, d):
            return self.bert(i, attention_mask=m, depths=d).last_hidden_state

    enc = Encoder(model.bert)
    with torch._dynamo.config.patch(**_TRACED_PLAN), torch.no_grad():
        compiled = torch.compile(enc, fullgraph=True)
        exported = torch.export.export(enc, (ids, mask, depths), strict=False).module()
        for seed in range(3):
            d = torch.randint(1, 4, ids.shape, generator=torch.Generator().manual_seed(seed)).clamp(max=2 + seed % 2)
            _close_on_real(compiled(ids, mask, d), enc(ids, mask, d), mask)
            _close_on_real(exported(ids, mask, d), enc(ids, mask, d), mask)
    torch._dynamo.reset()


def test_mpnet_head_is_stateless_through_a_context_variable():
    """MPNet's models drop **kwargs: depths given to the head reach the encoder through a
    call-scoped context variable. Threads, failures, copies and hidden states as for BERT."""
    from adaptive_encoder.patch import _CALLS

    torch.manual_seed(0)
    model = tf.MPNetForSequenceClassification(tf.MPNetConfig(**SMALL, num_labels=3)).eval()
    plain = copy.deepcopy(model)
    apply_adaptive_encoder(model)
    ids, mask, depths = _inputs()
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits
        torch.testing.assert_close(full, plain(ids, attention_mask=mask).logits, rtol=1e-5, atol=1e-5)
        mixed = model(ids, attention_mask=mask, depths=depths).logits
        x = _encoder_input(plain.mpnet, ids, mask)
        h = masked_forward(plain.mpnet, x, depths, mask)
        torch.testing.assert_close(mixed, plain.classifier(h), rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError, match="depth"):
            model(ids, attention_mask=mask, depths=depths + 10)
        assert _CALLS.get() == ()  # nothing left behind by the failed call
        assert torch.equal(model(ids, attention_mask=mask).logits, full)
        out = model(ids, attention_mask=mask, depths=depths, output_hidden_states=True)
        assert len(out.hidden_states) == 4
        _close_on_real(out.hidden_states[2], masked_forward(plain.mpnet, x, depths.clamp(max=2), mask), mask)
        with pytest.raises(ValueError, match="output_attentions"):
            model(ids, attention_mask=mask, output_attentions=True)
        buf = io.BytesIO()
        torch.save(model, buf)
        buf.seek(0)
        for m in (copy.deepcopy(model), torch.load(buf, weights_only=False)):
            assert torch.equal(m(ids, attention_mask=mask, depths=depths).logits, mixed)
    assert model.state_dict().keys() == plain.state_dict().keys()

    _assert_threads_get_their_own_results(model, ids, mask, calls=20)


def test_mpnet_gradients_match_transformers_at_full_depth():
    torch.manual_seed(0)
    cfg = tf.MPNetConfig(**SMALL, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = tf.MPNetForSequenceClassification(cfg).train()
    with torch.no_grad():
        model.mpnet.encoder.relative_attention_bias.weight.normal_(0, 1)
    plain = copy.deepcopy(model)
    apply_adaptive_encoder(model)
    ids, mask, _ = _inputs()
    labels = torch.tensor([0, 1, 2])
    for m in (model, plain):
        m(ids, attention_mask=mask, labels=labels).loss.backward()
    for (name, p), q in zip(model.named_parameters(), plain.parameters()):
        if q.grad is None:
            assert p.grad is None, name
            continue
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)
    assert model.mpnet.encoder.relative_attention_bias.weight.grad.abs().sum() > 0


class _Doubled(torch.nn.Linear):
    """A Linear subclass with its own forward, like a LoRA or quantized wrapper: its .weight is
    not what it computes with, so nothing may read the weight past its forward."""

    def forward(self, x):
        return 2 * super().forward(x)


def _wrap_linears(model):
    for name, m in list(model.named_modules()):
        for child_name, child in list(m.named_children()):
            if type(child) is torch.nn.Linear:
                new = _Doubled(child.in_features, child.out_features, bias=child.bias is not None)
                new.load_state_dict(child.state_dict())
                setattr(m, child_name, new)
    return model


@pytest.mark.parametrize("family", sorted(FAMILY_MODELS))
@pytest.mark.parametrize("grad", [False, True])
def test_wrapped_linears_run_their_own_forward(family, grad):
    """Every projection a Linear subclass with its own forward (doubling): the patched model
    still matches the unpatched one, in inference (fused-weight path) and with autograd."""
    torch.manual_seed(0)
    model = _wrap_linears(FAMILY_MODELS[family]().eval())
    plain = copy.deepcopy(model)
    ids, mask, _ = _inputs()
    apply_adaptive_encoder(model)
    with torch.set_grad_enabled(grad):
        out = model(input_ids=ids, attention_mask=mask).last_hidden_state
        ref = plain(input_ids=ids, attention_mask=mask).last_hidden_state
    _close_on_real(out, ref, mask, tol=1e-4)


@pytest.mark.parametrize("family", sorted(FAMILY_MODELS))
def test_direct_blocks_equal_the_module_calls(family):
    """The closing blocks run as functional calls unless a hook asks for the modules: both give
    the same numbers, with dropout in training (same seed, same draws) and in eval; bitwise
    with torch's add and LayerNorm, within float32 rounding with the fused kernel
    (adaptive_encoder/norm.py) that inference uses by default."""
    from adaptive_encoder import norm
    from adaptive_encoder.families import family_of

    torch.manual_seed(0)
    model = FAMILY_MODELS[family]()
    apply_adaptive_encoder(model)
    ids, mask, depths = _inputs()
    enc = model.transformer if model.config.model_type == "distilbert" else model.encoder
    parts = family_of(model.config).parts(enc.layer[0])
    seen = []
    for fused in (False, True):
        for training in (False, True):
            model.train(training)
            outs = []
            for hooked in (False, True):
                handle = parts.ffn_out.norm.register_forward_hook(lambda *a: seen.append(1)) if hooked else None
                torch.manual_seed(1)
                with torch.no_grad(), nullcontext() if fused else norm.unfused():
                    outs.append(model(input_ids=ids, attention_mask=mask, depths=depths).last_hidden_state)
                if handle is not None:
                    handle.remove()
            tol = dict(rtol=1e-5, atol=2e-6) if fused else dict(rtol=0, atol=0)
            torch.testing.assert_close(outs[0], outs[1], **tol)
    assert len(seen) == 4  # the hooked runs called the module (layer 0, eval and training, both ways)


def test_dropout_modules_in_eval_inside_a_training_model_are_honoured():
    """model.train() with every Dropout switched to eval (a common way to train without
    hidden dropout): deterministic and equal to transformers. (Attention dropout is decided by
    the attention module's mode in BERT, as in transformers: off in the config here.)"""
    torch.manual_seed(0)
    model = tf.BertModel(tf.BertConfig(**SMALL, attention_probs_dropout_prob=0.0))
    plain = copy.deepcopy(model)
    apply_adaptive_encoder(model)
    for m in (model, plain):
        m.train()
        m.apply(lambda mod: mod.eval() if isinstance(mod, torch.nn.Dropout) else None)
    ids, mask, _ = _inputs()
    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=mask).last_hidden_state
        b = model(input_ids=ids, attention_mask=mask).last_hidden_state
        ref = plain(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    _close_on_real(a, ref, mask)
