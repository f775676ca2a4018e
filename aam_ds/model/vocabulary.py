"""The model's nucleotide vocabulary: ``PAD=0, A=1, C=2, G=3, T=4, N=5, MASK=6`` (``VOCAB_SIZE=7``).

The token ids are the model's input contract, so they live with the model (torch-free);
:mod:`aam_ds.data.sequences` tokenises ASVs into them.
"""

PAD, A, C, G, T, N, MASK = range(7)
VOCAB_SIZE = 7
