"""The machine a job runs on: the CPU's features (``cpu``), the device and mixed precision (``device``), and the
``torchrun`` process group (``distributed``). Imports core modules only; jobs and apps import it."""
