from minorpo.logprobs import sequence_logps
