from services.classifier.worker import make_handler
from shared.messages import Stage
from shared.runtime.service import main

main("classifier", Stage.CLASSIFY, make_handler)
