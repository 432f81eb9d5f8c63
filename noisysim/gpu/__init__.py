"""GPU measurements: the checks and peers that only make sense on an NVIDIA GPU.

The cuda backend itself is not here: the engine is written once (``noisysim.device``,
``noisysim.rules``, ``noisysim.optim``, ``noisysim.decorrelation``, ``noisysim.train``) over
the kernel sets of ``noisysim.kernels`` (``backend.CPU``, ``cuda_backend.CudaKernels``).

    torch_step   a PyTorch CUDA step doing the same work, for timing comparisons
    check        the table of experiments/gpu_check.sh: noisysim's cuda step against the
                 PyTorch step, GPU-busy fraction and kernel launches per step
"""
