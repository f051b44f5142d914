"""Small models of kdistill's own: the BiLSTM student, the digits CNN teacher and MLP student."""
