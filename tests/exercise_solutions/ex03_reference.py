from minorpo.loss import log_odds, log_odds_ratio, odds_ratio_loss
