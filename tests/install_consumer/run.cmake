# Usage: cmake -DSRC=<dd source> -DBIN=<dd build> -DWORK=<scratch dir>
#              [-DGEN=<generator>] [-DCXX=<c++ compiler>] -P run.cmake
foreach(var SRC BIN WORK)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "install_consumer: -D${var}=... is required")
  endif()
endforeach()

set(PREFIX "${WORK}/prefix")
set(CBUILD "${WORK}/build")

file(REMOVE_RECURSE "${WORK}")
file(MAKE_DIRECTORY "${WORK}")

# 1. Install the library into a scratch prefix.
message(STATUS "install_consumer: installing ${BIN} -> ${PREFIX}")
execute_process(
  COMMAND "${CMAKE_COMMAND}" --install "${BIN}" --prefix "${PREFIX}" --config Release
  RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "install_consumer: cmake --install failed (${rc})")
endif()

# 2. Configure the consumer as a separate project.
set(configure_args
  -S "${SRC}/tests/install_consumer"
  -B "${CBUILD}"
  "-DCMAKE_PREFIX_PATH=${PREFIX}"
  -DCMAKE_BUILD_TYPE=Release)
if(DEFINED GEN AND NOT GEN STREQUAL "")
  list(APPEND configure_args -G "${GEN}")
endif()
if(DEFINED CXX AND NOT CXX STREQUAL "")
  list(APPEND configure_args "-DCMAKE_CXX_COMPILER=${CXX}")
endif()
message(STATUS "install_consumer: configuring consumer")
execute_process(COMMAND "${CMAKE_COMMAND}" ${configure_args} RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "install_consumer: configuring the consumer failed (${rc})")
endif()

# 3. Build it.
message(STATUS "install_consumer: building consumer")
execute_process(
  COMMAND "${CMAKE_COMMAND}" --build "${CBUILD}" --config Release --parallel
  RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "install_consumer: building the consumer failed (${rc})")
endif()

# 4. Run it (single- or multi-config layout).
set(exe "")
foreach(candidate "${CBUILD}/consumer" "${CBUILD}/Release/consumer"
                  "${CBUILD}/consumer.exe" "${CBUILD}/Release/consumer.exe")
  if(EXISTS "${candidate}")
    set(exe "${candidate}")
    break()
  endif()
endforeach()
if(exe STREQUAL "")
  message(FATAL_ERROR "install_consumer: consumer executable not found under ${CBUILD}")
endif()

message(STATUS "install_consumer: running ${exe}")
execute_process(
  COMMAND "${exe}"
  RESULT_VARIABLE rc
  OUTPUT_VARIABLE out
  ERROR_VARIABLE err)
message("${out}")
if(NOT err STREQUAL "")
  message("stderr:\n${err}")
endif()
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "install_consumer: consumer exited with ${rc}")
endif()
message(STATUS "install_consumer: OK")
