from services.upscaler.worker import make_handler
from shared.messages import Stage
from shared.runtime.service import main

main("upscaler", Stage.UPSCALE, make_handler)
