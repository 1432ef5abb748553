import os

# Busy-waiting OpenMP threads make torch 10-20x slower when the 2 cores are shared (parallel test workers,
# a server thread beside the client); passive waiting costs nothing measurable when they are not.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
