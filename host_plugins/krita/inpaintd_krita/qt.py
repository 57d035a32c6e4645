"""The Qt binding Krita runs on: PyQt5 in Krita 5, PyQt6 in Krita 6, chosen as Krita does.

Krita refuses the other binding on purpose (two Qt copies must never load into one
process), so the plug-in asks Krita which one it has: ``pykrita.qt_major_version()``,
which Krita 5.3 and 6 provide; before 5.3 there is only Qt5. Every other module imports
its Qt names from here and writes what both bindings accept: scoped enums
(``Qt.WindowModality.NonModal``) and ``exec()``, which PyQt5 5.11+ also has.
"""

from __future__ import annotations


def qt_major_version() -> int:
    """5 or 6: the Qt major version this Krita was built with."""
    try:
        import pykrita
    except ImportError:  # outside Krita (tests of the plug-in's code): whichever imports
        try:
            import PyQt6  # noqa: F401
        except ImportError:
            return 5
        return 6
    version = getattr(pykrita, "qt_major_version", None)
    return int(version()) if callable(version) else 5


QT_MAJOR = qt_major_version()

if QT_MAJOR >= 6:
    from PyQt6 import QtCore, QtGui, QtWidgets
    from PyQt6.QtGui import QAction
else:
    from PyQt5 import QtCore, QtGui, QtWidgets  # type: ignore[no-redef]
    from PyQt5.QtWidgets import QAction  # type: ignore[no-redef]

Qt = QtCore.Qt
QByteArray = QtCore.QByteArray
QEventLoop = QtCore.QEventLoop
QObject = QtCore.QObject
QTimer = QtCore.QTimer
pyqtSignal = QtCore.pyqtSignal
QImage = QtGui.QImage

QApplication = QtWidgets.QApplication
QCheckBox = QtWidgets.QCheckBox
QComboBox = QtWidgets.QComboBox
QDialog = QtWidgets.QDialog
QDialogButtonBox = QtWidgets.QDialogButtonBox
QDoubleSpinBox = QtWidgets.QDoubleSpinBox
QFileDialog = QtWidgets.QFileDialog
QFormLayout = QtWidgets.QFormLayout
QHBoxLayout = QtWidgets.QHBoxLayout
QLabel = QtWidgets.QLabel
QLineEdit = QtWidgets.QLineEdit
QMessageBox = QtWidgets.QMessageBox
QProgressBar = QtWidgets.QProgressBar
QProgressDialog = QtWidgets.QProgressDialog
QPushButton = QtWidgets.QPushButton
QSpinBox = QtWidgets.QSpinBox
QVBoxLayout = QtWidgets.QVBoxLayout
QWidget = QtWidgets.QWidget

__all__ = ["QT_MAJOR", "QtCore", "QtGui", "QtWidgets", "QAction", "Qt", "QByteArray",
           "QEventLoop", "QObject", "QTimer", "pyqtSignal", "QImage", "QApplication",
           "QCheckBox", "QComboBox", "QDialog", "QDialogButtonBox", "QDoubleSpinBox",
           "QFileDialog", "QFormLayout", "QHBoxLayout", "QLabel", "QLineEdit", "QMessageBox",
           "QProgressBar", "QProgressDialog", "QPushButton", "QSpinBox", "QVBoxLayout", "QWidget"]
