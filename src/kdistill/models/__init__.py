"""Small models of kdistill's own.

    bilstm.py   the BiLSTM student of Tang et al. (2019) and its word-level tokenizer (student_init: bilstm), a
                `transformers` model so it trains, saves and loads like any other; for token_classification a
                per-word tagger with one token per word
    digits.py   the demo's CNN teacher and MLP student (plain `torch.nn.Module`s, the image task's models)
"""
