"""The submission contract every process reads: what a client may ask for and where an output may go.

`catalog` names the official models and routes categories to them, `options` holds the upscale options
with their ranges and checks them, `destinations` parses the output URL forms. The API validates
submissions with them (and derives its accepted-values document from them), the stages act on them:
no service imports another service's modules to learn the contract.
"""
