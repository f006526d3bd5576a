from minorpo.loss import log1mexp
