from services.uploader.worker import make_handler
from shared.messages import Stage
from shared.runtime.service import main

main("uploader", Stage.UPLOAD, make_handler)
