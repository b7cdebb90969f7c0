"The one thing pyproject.toml cannot say: the wheel also carries llmlab-lm-eval.pth, so that `lm_eval --model llmlab` works."
from pathlib import Path
from setuptools import setup
from setuptools.command.build_py import build_py

PTH = 'llmlab-lm-eval.pth'

class build_py_with_pth(build_py):
    "Copy the .pth file to the top of the wheel (site-packages); `make install` copies it for editable installs."
    def run(self):
        super().run()
        self.copy_file(PTH, str(Path(self.build_lib) / PTH))

    def get_outputs(self, include_bytecode=1):
        return super().get_outputs(include_bytecode) + [str(Path(self.build_lib) / PTH)]

setup(cmdclass={'build_py': build_py_with_pth})
