from services.fetcher.worker import make_handler
from shared.messages import Stage
from shared.runtime.service import main

main("fetcher", Stage.FETCH, make_handler)
