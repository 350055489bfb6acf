# Installs the client component of the build into a fresh prefix, then builds and runs the C
# consumer example against it with find_package(nsa_tune_client), as a user's project would.
# Run by ctest: cmake -DBUILD_DIR=... -DEXAMPLE_DIR=... -DWORK_DIR=... -P package_consumer_test.cmake
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})
function(run what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${what} failed (${rc}):\n${out}\n${err}")
  endif()
  set(last_output "${out}" PARENT_SCOPE)
endfunction()
run("install" ${CMAKE_COMMAND} --install ${BUILD_DIR} --component nsa_tune_client --prefix ${WORK_DIR}/prefix)
run("configure" ${CMAKE_COMMAND} -S ${EXAMPLE_DIR} -B ${WORK_DIR}/build -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix)
run("build" ${CMAKE_COMMAND} --build ${WORK_DIR}/build)
# No daemon at this path: the example must print the fallback and exit 0.
run("run" ${WORK_DIR}/build/nsa_tune_consumer ${WORK_DIR}/absent.sock)
if(NOT last_output MATCHES "backend=sdpa provenance=4" OR NOT last_output MATCHES "no daemon listening")
  message(FATAL_ERROR "unexpected output of the consumer:\n${last_output}")
endif()
message(STATUS "consumer output:\n${last_output}")
file(REMOVE_RECURSE ${WORK_DIR})
