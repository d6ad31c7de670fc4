"""The spectra records and their JSON form."""

import json

import torch

from curvlab.subspace.spectra import LayerwiseSpectra, layerwise_spectra


def test_json_round_trip(hessian):
    spectra = layerwise_spectra(hessian, method="exact", top_k=2, bottom_k=1)
    again = LayerwiseSpectra.from_dict(json.loads(json.dumps(spectra.to_dict())))
    for a, b in [(spectra.full, again.full)] + [
        (spectra.blocks[n], again.blocks[n]) for n in spectra.blocks
    ]:
        assert a.to_dict() == b.to_dict()
        assert torch.equal(a.nodes, b.nodes)
