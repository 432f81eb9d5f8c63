import os
import sys

# tests/ holds the plain-numpy references (naive*.py) that test modules import.
sys.path.insert(0, os.path.dirname(__file__))
