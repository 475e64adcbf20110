"""The seeds' other conversion methods, each measurable against the plain conversion.

- :mod:`~ann2snn.methods.coding`: rate (Bernoulli) input coding, fed as a pre-encoded sequence;
- :mod:`~ann2snn.methods.noise`: salt-and-pepper noise on the input, and on chosen steps of the SNN's input;
- :mod:`~ann2snn.methods.readout`: a LIF read-out layer and its unsupervised pair-based STDP training;
- :mod:`~ann2snn.methods.calibrate`: COS (calibrated initial membranes) and SRP (pre-run mask);
- :mod:`~ann2snn.methods.ttrbr`: TTRBR for ResNet-style QANNs (residual blocks restructured, thresholds tuned for
  one T): ``ann2snn.convert(apply_ttrbr(qann, x, y, T=2)[0], T=2)``;
- multi-bit spikes are a conversion option (``ann2snn.convert(qann, max_spikes=D)``,
  :class:`ann2snn.neurons.MultiBitNeuron`);
- :mod:`~ann2snn.methods.compare`: all of them against the plain conversion on the same batches, by T and by
  noise level (``ann2snn eval --encoding rate --max-spikes 2 --cos --srp 2 --lif-readout 0.8 --ttrbr both
  --noise ...``).
"""

from ann2snn.methods.calibrate import apply_cos, apply_srp, offset_spikes, srp_readout
from ann2snn.methods.coding import rate_encode
from ann2snn.methods.compare import PLAIN, Method, compare_methods
from ann2snn.methods.noise import NoiseSpec, parse_noise, parse_noise_steps, salt_pepper
from ann2snn.methods.readout import LIFReadout, STDPConfig, train_stdp
from ann2snn.methods.ttrbr import TTRBRConfig, apply_ttrbr, restructure_residuals, tune_thresholds

__all__ = ["rate_encode", "NoiseSpec", "parse_noise", "parse_noise_steps", "salt_pepper",
           "LIFReadout", "STDPConfig", "train_stdp", "apply_cos", "apply_srp", "offset_spikes", "srp_readout",
           "TTRBRConfig", "apply_ttrbr", "restructure_residuals", "tune_thresholds",
           "Method", "PLAIN", "compare_methods"]
