"""The tiny classification run the command-line tests share: 200 digits, batches of 50,
2 epochs = 8 updates, anp under Gaussian device noise; a second or two per run."""

TINY = """\
name = "tiny"
seed = 0

[model]
layers = [64, 16, 10]

[noise]
model = "gaussian"
sigma = 0.01

[rule]
name = "anp"
sigma = 1e-3

[optimizer]
name = "adam"
lr = 1e-2

[data]
name = "digits"
n_train = 200
n_test = 100

[train]
epochs = 2
batch_size = 50
log_every = 1

[backend]
name = "cpu"
"""
