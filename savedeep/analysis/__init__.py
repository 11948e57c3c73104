"""Analysis and exports of a finished output: statistics and RDMs (:mod:`.stats`), the HTML report
(:mod:`.report`) and the xarray / netCDF / MATLAB / NumPy / Brain-Score views (:mod:`.interop`).

May import: :mod:`savedeep.data` (the output's readers), :mod:`savedeep.caffe` (receptive fields for
coordinates) and the leaf modules. Never the runner (the supervisor, workers, locks): an output is
analysed the same whether it was written a second ago or on another machine.
"""
