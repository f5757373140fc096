"""Training EMO's own weights (paper sections 3.3 and 4.1): data preparation from talking-head videos
(:mod:`.prepare`, webdataset tar shards read by :mod:`.shards`), a synthetic talking-head generator
(:mod:`.synthetic`) and the three training stages plus the Hallo shortcut stage (:mod:`.trainer`)."""
