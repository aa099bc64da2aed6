"""The run configs (tiny, small, paper, demo, bench), installed as ``imagen_ray.configs``.

A Python package only so that a wheel and an editable install can ship this folder as
package data (see setup.py); :func:`imagen_ray.demo.configs.configs_root` finds it.
"""
