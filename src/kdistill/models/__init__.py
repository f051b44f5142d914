"""Small models of kdistill's own, as `transformers` models so they train, save and load like any other.

    bilstm.py   the BiLSTM student of Tang et al. (2019) and its word-level tokenizer (student_init: bilstm)
"""
